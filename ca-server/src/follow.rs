//! Following the other replicas that share this CA's store. A change made through one
//! replica (a revocation, a root, JWT key or federation change and its bundle version, a
//! root activation's new signing intermediate, a JWT key activation) is written to the
//! store only; every replica reads back, every [`FOLLOW_INTERVAL`], what it would have
//! published itself and publishes it when it differs, so sidecars connected to any replica
//! see it within the interval plus one stream message; a store that announces changes
//! (PostgreSQL's `LISTEN/NOTIFY`) wakes the follower at once. Each check is one small read (the
//! bundle version, a marker of the revocations, the active intermediate and JWT key), so a
//! CA alone on its store (sled) pays little and finds nothing new.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bootstrap::{self, store_err};
use crate::error::CaError;
use crate::jwt_svid::{JwtKeys, JwtSigner};
use crate::revocation::Revocations;
use crate::roots::Roots;
use crate::state::{Core, off_runtime};
use crate::store::RootState;

/// How often a replica reads back what the others changed: a change reaches every
/// replica's sidecars within this plus one stream message, well inside two seconds.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Follows the changes other replicas record in the shared store.
#[derive(Debug)]
pub(crate) struct Follower {
    core: Arc<Core>,
    revocations: Arc<Revocations>,
    jwt_keys: Arc<JwtKeys>,
    roots: Arc<Roots>,
    /// The revocations' marker when this replica last read the list.
    revocations_seen: Mutex<Option<(u64, u64)>>,
    /// An intermediate this replica signs with but whose serving certificate or admin
    /// credentials it has not yet moved under (the store failed meanwhile): retried.
    unmoved: Mutex<Option<String>>,
    /// A signing key another replica made that this one cannot load, once warned about.
    missing_key: Mutex<Option<String>>,
}

impl Follower {
    pub(crate) fn new(
        core: Arc<Core>,
        revocations: Arc<Revocations>,
        jwt_keys: Arc<JwtKeys>,
        roots: Arc<Roots>,
    ) -> Self {
        Self {
            core,
            revocations,
            jwt_keys,
            roots,
            unmoved: Mutex::new(None),
            revocations_seen: Mutex::new(None),
            missing_key: Mutex::new(None),
        }
    }

    /// Reads back everything another replica may have changed and publishes what differs.
    pub(crate) async fn catch_up(&self) -> Result<(), CaError> {
        // The bundle first: a new intermediate must verify against the bundle in force.
        self.core.follow_bundle().await?;
        self.follow_revocations()?;
        self.follow_signer().await?;
        self.follow_jwt_key().await
    }

    fn follow_revocations(&self) -> Result<(), CaError> {
        let marker = self.core.store.revocations_marker().map_err(store_err)?;
        let mut seen = self
            .revocations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *seen == Some(marker) {
            return Ok(());
        }
        self.revocations.refresh()?;
        *seen = Some(marker);
        Ok(())
    }

    /// Signs with the intermediate the store names active, once its key is readable here
    /// (and moves this replica's serving certificate and admin credentials under it, as the
    /// replica that activated it did); until then keeps signing with the one it has, saying
    /// why once.
    async fn follow_signer(&self) -> Result<(), CaError> {
        let Some(record) = self.core.store.active_intermediate().map_err(store_err)? else {
            return Ok(());
        };
        if record.id == self.core.signer().id {
            let unmoved = self
                .unmoved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_if(|u| *u == record.id);
            if unmoved.is_some() {
                self.move_credentials(&record.id).await?;
            }
            return Ok(());
        }
        let keys = self.core.keys.clone();
        let id = record.id.clone();
        match off_runtime(move || bootstrap::load_intermediate(&keys, &record)).await {
            Ok(signer) => {
                tracing::info!(
                    intermediate = %id,
                    "signing with the intermediate another replica activated"
                );
                self.core.set_signer(signer);
                self.move_credentials(&id).await?;
            }
            Err(e) => self.missing(&id, "intermediate", &e),
        }
        Ok(())
    }

    /// Moves the serving certificate and the admin credentials under `intermediate`, the
    /// signer now in force; remembers to retry if that fails.
    async fn move_credentials(&self, intermediate: &str) -> Result<(), CaError> {
        let moved = self.roots.move_credentials().await;
        if moved.is_err() {
            *self.unmoved.lock().unwrap_or_else(|p| p.into_inner()) = Some(intermediate.to_owned());
        }
        moved
    }

    /// Signs JWT-SVIDs with the key the store names active, once its key is readable here.
    async fn follow_jwt_key(&self) -> Result<(), CaError> {
        let Some(record) = self
            .core
            .store
            .jwt_keys()
            .map_err(store_err)?
            .into_iter()
            .find(|k| k.state == RootState::Active)
        else {
            return Ok(());
        };
        if record.kid == self.jwt_keys.active().kid {
            return Ok(());
        }
        let keys = self.core.keys.clone();
        let kid = record.kid.clone();
        match off_runtime(move || JwtSigner::load(&keys, &record)).await {
            Ok(signer) => {
                tracing::info!(kid = %kid, "signing JWT-SVIDs with the key another replica activated");
                self.jwt_keys.follow(Arc::new(signer));
            }
            Err(e) => self.missing(&kid, "JWT key", &e),
        }
        Ok(())
    }

    fn missing(&self, id: &str, what: &str, e: &CaError) {
        let mut warned = self.missing_key.lock().unwrap_or_else(|p| p.into_inner());
        if warned.as_deref() != Some(id) {
            tracing::error!(
                error = %e,
                key = id,
                "another replica activated {what} {id}, whose key this replica cannot read; \
                 it keeps signing with the previous one: give every replica the same \
                 key-encryption key"
            );
            *warned = Some(id.to_owned());
        }
    }
}

/// Catches up with the other replicas as soon as the store announces a change, and every
/// [`FOLLOW_INTERVAL`] in any case (an announcement can be lost with its connection).
pub(crate) async fn run(follower: Arc<Follower>, stop: CancellationToken) {
    let mut failing = false;
    let mut announced = follower.core.store.announced_changes();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = announcement(&mut announced) => {}
            _ = stop.cancelled() => return,
        }
        match follower.catch_up().await {
            Ok(()) => failing = false,
            // The store's own outage is reported by the requests it fails; say it here once.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "reading other replicas' changes failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Returns when the store announces a change; never if it cannot announce any.
async fn announcement(announced: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let Some(changes) = announced else {
        return std::future::pending().await;
    };
    if changes.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
