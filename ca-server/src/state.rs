//! The shared core every service of the CA builds on: configuration, store, clock, the
//! signing intermediate and the published trust bundle, with the lock that orders bundle
//! changes. Each service (`issuance`, `tokens`, `roots`, `revocation`, `federation`,
//! `jwt_svid`, `audit`, `acks`) owns its own state and takes this by `Arc`.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use trellis_identity::bundle::{KnownIssuer, Usage, VerifiedSvid};
use trellis_identity::clock::Clock;
use trellis_identity::profile::SigningCa;
use trellis_identity::svid::SvidError;
use trellis_identity::{TrustBundle, ca_files, files};

use crate::bootstrap::{self, DataDir};
use crate::config::Config;
use crate::error::CaError;
use crate::keys::Keys;
use crate::peer::PeerChain;
use crate::recent::RecentCertificates;
use crate::store::{BundleChangeGuard, Store};

/// What every service shares.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
    /// The CA's private keys (`keys.rs`).
    pub(crate) keys: Keys,
    clock: Arc<dyn Clock>,
    signer: RwLock<Signer>,
    /// Bumped whenever the signing intermediate changes (the serving certificate follows).
    signer_changes: watch::Sender<u64>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    /// Held from reading the bundle version to publishing the next one, so that root, JWT
    /// key and federation changes never give two different bundles the same version.
    bundle_changes: tokio::sync::Mutex<()>,
    /// Certificate records written or read lately (`recent.rs`).
    pub(crate) recent: RecentCertificates,
}

/// Held from reading the bundle version to publishing the next one: this CA's lock and
/// the store's, which other replicas take too (dropped in that order).
#[derive(Debug)]
pub(crate) struct BundleChange<'a> {
    _shared: BundleChangeGuard,
    _local: tokio::sync::MutexGuard<'a, ()>,
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

impl Core {
    /// The core of an initialised CA.
    pub(crate) fn new(
        config: Config,
        store: Arc<dyn Store>,
        keys: Keys,
        clock: Arc<dyn Clock>,
        signer: SigningCa,
        bundle: TrustBundle,
    ) -> Self {
        Self {
            config,
            store,
            keys,
            clock,
            signer: RwLock::new(Signer::new(signer, &bundle)),
            signer_changes: watch::Sender::new(0),
            bundle: watch::Sender::new(Arc::new(bundle)),
            bundle_changes: tokio::sync::Mutex::new(()),
            recent: RecentCertificates::default(),
        }
    }

    /// The data directory's layout.
    pub(crate) fn data_dir(&self) -> DataDir {
        DataDir(self.config.data_dir.clone())
    }

    /// The injected clock.
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Now, from the injected clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Now as Unix seconds.
    pub(crate) fn now_unix(&self) -> u64 {
        unix(self.now())
    }

    /// The intermediate that signs new certificates.
    pub(crate) fn signer(&self) -> Arc<SigningCa> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ca
            .clone()
    }

    /// Replaces the signing intermediate (root activation).
    pub(crate) fn set_signer(&self, signer: SigningCa) {
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) =
            Signer::new(signer, &self.bundle());
        self.signer_changes.send_modify(|n| *n += 1);
    }

    /// Follows changes of the signing intermediate.
    pub(crate) fn watch_signer(&self) -> watch::Receiver<u64> {
        self.signer_changes.subscribe()
    }

    /// Verifies a connection's client chain against the current bundle, with the signing
    /// intermediate as a shortcut for the chains it signed (see
    /// [`TrustBundle::verify_with_known`]), reusing the connection's earlier result while
    /// it still holds (see [`PeerChain`]).
    pub(crate) fn verify_peer(
        &self,
        peer: &PeerChain,
        now: SystemTime,
    ) -> Result<VerifiedSvid, SvidError> {
        let bundle = self.bundle();
        peer.verify_with(&bundle, now, |chain| {
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
        })
    }

    /// The current trust bundle.
    pub(crate) fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows trust-bundle changes.
    pub(crate) fn watch_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Waits for any other bundle or root change to finish; hold the guard until the new
    /// version is published. The bundle in force is then the one stored, so that the next
    /// version is counted from the newest one any replica sharing the store has written, and
    /// what the change decides on (the roots, the keys and their states) is to be read from
    /// the store after this returns, never before: another replica may have changed it
    /// meanwhile. Fails when the store's lock cannot be taken, since deciding without it
    /// could race another replica.
    pub(crate) async fn changing_bundle(&self) -> Result<BundleChange<'_>, CaError> {
        let local = self.bundle_changes.lock().await;
        // Other replicas sharing the store wait too.
        let store = self.store.clone();
        let shared = off_runtime(move || {
            store.bundle_change_guard().map_err(|e| {
                CaError::Unavailable(format!(
                    "certificate store unavailable: taking the lock that orders bundle and \
                     root changes across replicas: {e}; nothing was changed"
                ))
            })
        })
        .await?;
        self.follow_bundle_locked().await?;
        Ok(BundleChange {
            _shared: shared,
            _local: local,
        })
    }

    /// Publishes the stored bundle if another replica sharing the store has changed it.
    pub(crate) async fn follow_bundle(&self) -> Result<(), CaError> {
        let stored = self.store.bundle_version().map_err(bootstrap::store_err)?;
        if stored <= self.bundle().version() {
            return Ok(());
        }
        let _bundle_change = self.bundle_changes.lock().await;
        self.follow_bundle_locked().await
    }

    async fn follow_bundle_locked(&self) -> Result<(), CaError> {
        let stored = self.store.bundle_version().map_err(bootstrap::store_err)?;
        if stored <= self.bundle().version() {
            return Ok(());
        }
        self.republish_bundle("changed_by_another_replica", &format!("version {stored}"))
            .await
    }

    /// Publishes a new trust bundle to every watcher.
    pub(crate) fn publish_bundle(&self, bundle: TrustBundle) {
        self.bundle.send_replace(Arc::new(bundle));
    }

    /// Publishes the bundle as now stored (and rewrites bundle.pem, and the admin
    /// directory's copy: a root added through any replica is then trusted by the operator's
    /// `trellis` before this replica's serving certificate moves under it), after a change
    /// of `subject` by `kind` that has already been made durable with its new version.
    pub(crate) async fn republish_bundle(&self, kind: &str, subject: &str) -> Result<(), CaError> {
        let bundle = bootstrap::bundle_from_store(&self.config.trust_domain, &*self.store)?;
        let path = self.data_dir().bundle_pem();
        let admin_copy = self.data_dir().admin().join(ca_files::BUNDLE);
        let pem = bundle.to_pem();
        off_runtime(move || {
            files::write_atomic(&path, pem.as_bytes(), 0o644)
                .map_err(|e| CaError::Unavailable(format!("writing bundle.pem: {e}")))?;
            if admin_copy.exists() {
                files::write_atomic(&admin_copy, pem.as_bytes(), 0o644).map_err(|e| {
                    CaError::Unavailable(format!("writing {}: {e}", admin_copy.display()))
                })?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(
            version = bundle.version(),
            roots = bundle.roots().len(),
            federated = bundle.federated().len(),
            kind,
            subject,
            "trust bundle changed"
        );
        self.publish_bundle(bundle);
        Ok(())
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
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, CaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CaError::Internal(format!("blocking task: {e}")))?
}
