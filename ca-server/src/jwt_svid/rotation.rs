//! JWT-SVID key rotation, with the safety of root rotation: add (pending, in the bundle) →
//! activate (it signs; the old key is retiring, still in the bundle) → retire (out of the
//! bundle).
//! - activation waits until every live workload has acknowledged a bundle that contains the
//!   key (otherwise they would refuse the tokens it signs);
//! - retirement waits until no token the key signed can still be valid: its last signing
//!   time (when another key was activated) plus the longest lifetime the CA signs.
//!
//! Both can be forced; the refusal says what would break.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{JwtSigner, SWITCH_GRACE, generate_key};
use crate::bootstrap::store_err;
use crate::error::CaError;
use crate::roots::Roots;
use crate::state::Core;
use crate::store::{Change, JwtKeyRecord, RootState};

/// A key with what the CLI shows.
#[derive(Debug, Clone)]
pub(crate) struct JwtKeyView {
    pub(crate) record: JwtKeyRecord,
    /// From when retiring it cannot cut off a valid token (None: it is active).
    pub(crate) retirable_at: Option<SystemTime>,
}

/// The JWT-key rotation service; holds the active (signing) key.
#[derive(Debug)]
pub(crate) struct JwtKeys {
    core: Arc<Core>,
    /// The census, the convergence check and bundle changes are root rotation's.
    roots: Arc<Roots>,
    active: RwLock<Arc<JwtSigner>>,
}

impl JwtKeys {
    pub(crate) fn new(core: Arc<Core>, roots: Arc<Roots>, active: Arc<JwtSigner>) -> Self {
        Self {
            core,
            roots,
            active: RwLock::new(active),
        }
    }

    /// The active JWT-SVID signing key.
    pub(crate) fn active(&self) -> Arc<JwtSigner> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signs with `signer` from now on: the key another replica activated.
    pub(crate) fn follow(&self, signer: Arc<JwtSigner>) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = signer;
    }

    /// When no token signed by `key` can still be valid; None while it signs.
    fn retirable_at(&self, key: &JwtKeyRecord) -> Option<SystemTime> {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        match (key.state, key.deactivated_at) {
            (RootState::Active, _) => None,
            (_, Some(stopped)) => {
                Some(at(stopped) + self.core.config.jwt_svid.max_ttl + SWITCH_GRACE)
            }
            // Never signed.
            (_, None) => Some(at(key.created_at)),
        }
    }

    /// Every JWT-SVID key, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<JwtKeyView>, CaError> {
        Ok(self
            .core
            .store
            .jwt_keys()
            .map_err(store_err)?
            .into_iter()
            .map(|record| JwtKeyView {
                retirable_at: self.retirable_at(&record),
                record,
            })
            .collect())
    }

    fn key(&self, kid: &str) -> Result<JwtKeyRecord, CaError> {
        self.core
            .store
            .jwt_keys()
            .map_err(store_err)?
            .into_iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| {
                CaError::NotFound(format!("no JWT key {kid:?}; see `trellis jwt-key list`"))
            })
    }

    /// Generates a new key, pending: in the bundle, not signing.
    pub(crate) async fn add(&self, actor: &str) -> Result<JwtKeyView, CaError> {
        let _bundle_change = self.core.changing_bundle().await?;
        let version = self.core.bundle().version() + 1;
        let record = generate_key(&self.core.keys, self.core.now_unix(), version)?;
        let change = Change {
            jwt_keys: vec![record.clone()],
            ..Change::default()
        };
        self.roots
            .bump_bundle(change, version, "jwt_key_added", &record.kid, actor)
            .await?;
        Ok(JwtKeyView {
            retirable_at: self.retirable_at(&record),
            record,
        })
    }

    /// Makes a pending (or retiring) key the signing one.
    pub(crate) async fn activate(
        &self,
        kid: &str,
        force: bool,
        actor: &str,
    ) -> Result<JwtKeyView, CaError> {
        // Decided on the keys as stored under the lock every replica takes (as for roots).
        let _bundle_change = self.core.changing_bundle().await?;
        let target = self.key(kid)?;
        match target.state {
            RootState::Active => {
                return Err(CaError::FailedPrecondition(format!(
                    "JWT key {kid} is already active"
                )));
            }
            RootState::Retired => {
                return Err(CaError::FailedPrecondition(format!(
                    "JWT key {kid} is retired (out of the bundle); add a new key instead"
                )));
            }
            RootState::Pending | RootState::Retiring => {}
        }
        let convergence = self
            .roots
            .converged_on(
                &format!("JWT key {kid}"),
                target.added_in_bundle_version,
                force,
                "tokens signed with it",
            )
            .await?;
        let signer = Arc::new(JwtSigner::load(&self.core.keys, &target)?);
        let now = self.core.now_unix();
        let store = &self.core.store;
        let mut change = Change::default();
        for mut key in store.jwt_keys().map_err(store_err)? {
            if key.state == RootState::Active {
                key.state = RootState::Retiring;
                key.deactivated_at = Some(now);
                change.jwt_keys.push(key);
            }
        }
        let mut activated = target;
        activated.state = RootState::Active;
        activated.deactivated_at = None;
        change.jwt_keys.push(activated.clone());
        change.audit.push(self.roots.root_audit(
            "jwt_key_activated",
            kid,
            actor,
            if force && !convergence.unconverged.is_empty() {
                "forced"
            } else {
                ""
            },
        ));
        let mark = store.mark();
        store.apply(&change).map_err(store_err)?;
        store.durable(mark).await.map_err(store_err)?;
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = signer;
        tracing::info!(kid, "JWT key activated; new JWT-SVIDs are signed with it");
        Ok(JwtKeyView {
            retirable_at: None,
            record: activated,
        })
    }

    /// Takes a key out of the bundle.
    pub(crate) async fn retire(
        &self,
        kid: &str,
        force: bool,
        actor: &str,
    ) -> Result<JwtKeyView, CaError> {
        // Decided on the keys as stored under the lock every replica takes (as for roots).
        let _bundle_change = self.core.changing_bundle().await?;
        let target = self.key(kid)?;
        match target.state {
            RootState::Active => {
                return Err(CaError::FailedPrecondition(format!(
                    "JWT key {kid} is the active (signing) key; activate another key first"
                )));
            }
            RootState::Retired => {
                return Err(CaError::FailedPrecondition(format!(
                    "JWT key {kid} is already retired"
                )));
            }
            RootState::Pending | RootState::Retiring => {}
        }
        let retirable_at = self.retirable_at(&target);
        if let Some(at) = retirable_at
            && at > self.core.now()
            && !force
        {
            return Err(CaError::FailedPrecondition(format!(
                "JWT key {kid} signed tokens that may be valid until {} (its last signing time \
                 plus the longest JWT-SVID lifetime, {}); retire it after that, or use --force: \
                 those tokens will then be refused",
                trellis_identity::bundle::format_time(at),
                trellis_identity::duration::format(self.core.config.jwt_svid.max_ttl)
            )));
        }
        let mut retired = target;
        retired.state = RootState::Retired;
        let change = Change {
            jwt_keys: vec![retired.clone()],
            ..Change::default()
        };
        let version = self.core.bundle().version() + 1;
        self.roots
            .bump_bundle(change, version, "jwt_key_retired", kid, actor)
            .await?;
        Ok(JwtKeyView {
            retirable_at,
            record: retired,
        })
    }
}
