//! Trust-root rotation without downtime: add (pending, in the bundle) →
//! activate (a new intermediate under it signs; renewals move over) → retire (out of the
//! bundle), with two safety checks no other mesh makes:
//! - activation waits until every live workload has acknowledged a bundle that contains the
//!   root (otherwise peers would refuse certificates from it);
//! - retirement waits until no workload's newest unexpired certificate chains to the root
//!   (otherwise its connections to peers that dropped the root would fail).
//!
//! Both can be forced; the refusal says how many and which identities are affected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use trellis_identity::profile::{self, SigningCa};
use trellis_identity::spiffe::reserved;
use trellis_identity::{CertInfo, SpiffeId, TrustBundle};
use zeroize::Zeroizing;

use crate::acks::BundleAcks;
use crate::audit::Audit;
use crate::bootstrap::{self, store_err};
use crate::error::CaError;
use crate::follow::FOLLOW_INTERVAL;
use crate::issuance::Issuance;
use crate::revocation::Revocations;
use crate::serving::ServingIdentity;
use crate::state::{Core, off_runtime};
use crate::store::{
    AuditRecord, CertRecord, Change, IntermediateRecord, RootRecord, RootState, Store, StoreConfig,
    StoreError,
};

/// How many identities a refusal names before "and N more".
const NAMED: usize = 10;

/// How long after an activation every replica sharing the store has followed it: ten of
/// their reads of the store, which is ample for the one read, one key to open and two
/// certificates to issue that following takes.
pub(crate) const REPLICAS_FOLLOW: Duration = Duration::from_secs(5);
const _: () = assert!(REPLICAS_FOLLOW.as_millis() >= 10 * FOLLOW_INTERVAL.as_millis());

/// A root with the counts the CLI shows.
#[derive(Debug, Clone)]
pub(crate) struct RootView {
    pub(crate) record: RootRecord,
    pub(crate) info: CertInfo,
    pub(crate) live_certificates: u64,
    pub(crate) workloads_using: u64,
}

/// Live workloads and which of them lack the current bundle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Convergence {
    pub(crate) live: u64,
    pub(crate) unconverged: Vec<String>,
}

/// What the live certificates say right now, gathered in one walk of the expiry index
/// (O(live certificates), whatever the history).
#[derive(Debug, Default)]
pub(crate) struct Census {
    /// Unexpired certificates (revoked ones included).
    pub(crate) live_total: u64,
    /// Unexpired certificates by the root they chain to (revoked ones included).
    live_by_root: BTreeMap<String, u64>,
    /// Each identity's newest unexpired, unrevoked certificate.
    newest: HashMap<String, CertRecord>,
}

impl Census {
    fn take(store: &dyn Store, now: u64, revoked: &HashSet<String>) -> Result<Self, StoreError> {
        let mut census = Census::default();
        store.for_each_live(now, &mut |r| {
            census.live_total += 1;
            *census.live_by_root.entry(r.root_id.clone()).or_default() += 1;
            if revoked.contains(&r.serial) {
                return;
            }
            match census.newest.get(&r.spiffe_id) {
                Some(existing)
                    if (existing.issued_at, existing.issued_at_ns)
                        >= (r.issued_at, r.issued_at_ns) => {}
                _ => {
                    census.newest.insert(r.spiffe_id.clone(), r);
                }
            }
        })?;
        Ok(census)
    }
}

/// The root-rotation service; also what the rotation of JWT keys shares with it: the
/// census, the convergence check and the recording of a bundle change.
#[derive(Debug)]
pub(crate) struct Roots {
    core: Arc<Core>,
    acks: Arc<BundleAcks>,
    revocations: Arc<Revocations>,
    audit: Arc<Audit>,
    issuance: Arc<Issuance>,
    serving: Arc<ServingIdentity>,
}

impl Roots {
    pub(crate) fn new(
        core: Arc<Core>,
        acks: Arc<BundleAcks>,
        revocations: Arc<Revocations>,
        audit: Arc<Audit>,
        issuance: Arc<Issuance>,
        serving: Arc<ServingIdentity>,
    ) -> Self {
        Self {
            core,
            acks,
            revocations,
            audit,
            issuance,
            serving,
        }
    }

    /// Takes a census of the live certificates, off the async worker threads.
    pub(crate) async fn census(&self) -> Result<Census, CaError> {
        let now = self.core.now_unix();
        let revoked: HashSet<String> = self
            .revocations
            .current()
            .entries
            .iter()
            .map(|r| r.serial.clone())
            .collect();
        let store = self.core.store.clone();
        off_runtime(move || Census::take(&*store, now, &revoked).map_err(store_err)).await
    }

    /// Every root with its counts.
    pub(crate) fn list(&self, census: &Census) -> Result<Vec<RootView>, CaError> {
        let mut using: BTreeMap<String, u64> = BTreeMap::new();
        for record in census.newest.values() {
            *using.entry(record.root_id.clone()).or_default() += 1;
        }
        let mut roots = self.core.store.roots().map_err(store_err)?;
        roots.sort_by(|a, b| (a.added_at, &a.id).cmp(&(b.added_at, &b.id)));
        roots
            .into_iter()
            .map(|record| {
                let info = CertInfo::parse(&record.cert_der)
                    .map_err(|e| CaError::Internal(format!("stored root {}: {e}", record.id)))?;
                Ok(RootView {
                    live_certificates: census.live_by_root.get(&record.id).copied().unwrap_or(0),
                    workloads_using: using.get(&record.id).copied().unwrap_or(0),
                    record,
                    info,
                })
            })
            .collect()
    }

    /// Live workloads and those that have not acknowledged `version`. A workload is an
    /// identity with an unexpired, unrevoked certificate; one that has never acknowledged a
    /// bundle counts as not converged if its certificate came through the workload API (a
    /// sidecar, which follows the bundle stream), and not at all otherwise: the CA's own
    /// identities move with the activation, and a certificate an operator issued by hand
    /// has nothing that follows the stream, so waiting for it would wait forever.
    pub(crate) fn convergence(&self, census: &Census, version: u64) -> Convergence {
        let reports = self.acks.all();
        let td = self.core.config.trust_domain.as_str();
        let mut live = 0;
        let mut unconverged = Vec::new();
        for (id, newest) in &census.newest {
            let acknowledged = reports.get(id).copied();
            let follows_stream = !matches!(newest.issued_via.as_str(), "admin" | "ca")
                && !SpiffeId::new(id).is_ok_and(|i| i.is_under(td, reserved::PREFIX));
            if acknowledged.is_none() && !follows_stream {
                continue;
            }
            live += 1;
            if acknowledged.is_none_or(|v| v < version) {
                unconverged.push(id.clone());
            }
        }
        unconverged.sort();
        Convergence { live, unconverged }
    }

    /// Generates a new root, pending: in the bundle, not signing.
    pub(crate) async fn add(&self, actor: &str) -> Result<RootRecord, CaError> {
        let config = &self.core.config;
        let root = profile::new_root(&config.trust_domain, self.core.now(), config.root_ttl)?;
        let signer = SigningCa::new(root.cert.clone(), root.key)?;
        let key_pem = Zeroizing::new(signer.key().serialize_pem());
        self.insert_root(root.cert, Some(key_pem), actor).await
    }

    /// Imports a root (and, optionally, its key), pending.
    pub(crate) async fn import(
        &self,
        cert_pem: &[u8],
        key_pem: Option<&[u8]>,
        actor: &str,
    ) -> Result<RootRecord, CaError> {
        let bad = |m: String| CaError::InvalidArgument(m);
        let cert = trellis_identity::pem::certs_from_pem(cert_pem)
            .map_err(|e| bad(format!("root certificate: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| bad("root certificate: no certificate".into()))?;
        let info = CertInfo::parse(&cert).map_err(|e| bad(format!("root certificate: {e}")))?;
        if !info.is_ca || info.subject != info.issuer {
            return Err(bad(
                "the certificate to import is not a self-signed CA certificate (CA=true, subject = issuer)".into(),
            ));
        }
        if info.not_after <= self.core.now() {
            return Err(bad("the root to import has expired".into()));
        }
        // A root that cannot anchor a chain is refused here rather than at verification time.
        TrustBundle::new(self.core.config.trust_domain.clone(), 0, vec![cert.clone()])
            .map_err(|e| bad(format!("root certificate: {e}")))?;
        let key_pem = match key_pem {
            Some(pem) => {
                let text = Zeroizing::new(String::from_utf8_lossy(pem).into_owned());
                let key = KeyPair::from_pem(&text).map_err(|e| bad(format!("root key: {e}")))?;
                SigningCa::new(cert.clone(), key)
                    .map_err(|e| bad(format!("root key does not match the certificate: {e}")))?;
                Some(text)
            }
            None => None,
        };
        self.insert_root(cert, key_pem, actor).await
    }

    async fn insert_root(
        &self,
        cert: CertificateDer<'static>,
        key_pem: Option<Zeroizing<String>>,
        actor: &str,
    ) -> Result<RootRecord, CaError> {
        let id = trellis_identity::bundle::root_id(&cert)
            .map_err(|e| CaError::InvalidArgument(format!("root certificate: {e}")))?;
        // Held from the check that the root is new to its recording, so that two replicas
        // importing the same root cannot both record it.
        let _bundle_change = self.core.changing_bundle().await?;
        if self
            .core
            .store
            .roots()
            .map_err(store_err)?
            .iter()
            .any(|r| r.id == id)
        {
            return Err(CaError::FailedPrecondition(format!(
                "root {id} is already known to this CA"
            )));
        }
        let key_file = match key_pem {
            Some(pem) => {
                let name = format!("root-{id}.key.pem");
                let (keys, file) = (self.core.keys.clone(), name.clone());
                off_runtime(move || keys.save(&file, &pem)).await?;
                Some(name)
            }
            None => None,
        };
        let version = self.core.bundle().version() + 1;
        let record = RootRecord {
            id,
            cert_der: cert.to_vec(),
            state: RootState::Pending,
            added_at: self.core.now_unix(),
            key_file,
            added_in_bundle_version: version,
        };
        let change = Change {
            roots: vec![record.clone()],
            ..Change::default()
        };
        self.bump_bundle(change, version, "root_added", &record.id, actor)
            .await?;
        Ok(record)
    }

    /// Makes a pending (or retiring) root the signing one.
    pub(crate) async fn activate(
        &self,
        id: &str,
        force: bool,
        actor: &str,
    ) -> Result<RootRecord, CaError> {
        let core = &*self.core;
        // Every check below is decided on the roots as stored once no other change (through
        // this replica or another) is in progress, and holds until this one is recorded: two
        // activations at once end with one active root, the second refused as already
        // active or serialised after the first, and a retirement cannot take out a root
        // being activated.
        let _bundle_change = core.changing_bundle().await?;
        let mut roots = core.store.roots().map_err(store_err)?;
        let target =
            roots.iter().find(|r| r.id == id).cloned().ok_or_else(|| {
                CaError::NotFound(format!("no root {id:?}; see `trellis root list`"))
            })?;
        match target.state {
            RootState::Active => {
                return Err(CaError::FailedPrecondition(format!(
                    "root {id} is already active"
                )));
            }
            RootState::Retired => {
                return Err(CaError::FailedPrecondition(format!(
                    "root {id} is retired (out of the bundle); add a new root instead"
                )));
            }
            RootState::Pending | RootState::Retiring => {}
        }
        let convergence = self
            .converged_on(
                &format!("root {id}"),
                target.added_in_bundle_version,
                force,
                "peers whose certificates come from the new root",
            )
            .await?;
        if target.state == RootState::Pending && !force {
            self.refuse_before_partners_refresh(&target)?;
        }
        if !force {
            self.refuse_right_after_an_activation(id)?;
        }
        let key_file = target.key_file.clone().ok_or_else(|| {
            CaError::FailedPrecondition(format!(
                "the CA does not hold the private key of root {id}; it cannot create an \
                 intermediate under it"
            ))
        })?;
        let keys = core.keys.clone();
        let key = off_runtime(move || keys.load(&key_file, "root key")).await?;
        let root_signer = SigningCa::new(CertificateDer::from(target.cert_der.clone()), key)?;
        let inter = profile::new_intermediate(
            &core.config.trust_domain,
            &root_signer,
            core.now(),
            core.config.intermediate_ttl,
        )?;
        let mut signer = SigningCa::new(inter.cert, inter.key)?;
        signer.root_id = target.id.clone();
        let inter_key_file = format!("intermediate-{}.key.pem", signer.id);
        let inter_key_pem = Zeroizing::new(signer.key().serialize_pem());
        let (keys, file) = (core.keys.clone(), inter_key_file.clone());
        off_runtime(move || keys.save(&file, &inter_key_pem)).await?;
        let mut change = Change::default();
        for root in roots.iter_mut() {
            if root.state == RootState::Active {
                root.state = RootState::Retiring;
                change.roots.push(root.clone());
            }
        }
        let mut activated = target;
        activated.state = RootState::Active;
        change.roots.push(activated.clone());
        change.intermediate = Some(IntermediateRecord {
            id: signer.id.clone(),
            root_id: activated.id.clone(),
            cert_der: signer.cert.to_vec(),
            key_file: inter_key_file,
        });
        change.audit.push(self.root_audit(
            "root_activated",
            id,
            actor,
            &format!(
                "intermediate {}{}",
                signer.id,
                if force && !convergence.unconverged.is_empty() {
                    ", forced"
                } else {
                    ""
                }
            ),
        ));
        self.commit_root_change(&change).await?;
        self.sign_with(signer).await?;
        tracing::info!(root = id, "root activated; new certificates chain to it");
        Ok(activated)
    }

    /// Signs with `signer` from now on, after an activation through this replica or
    /// another: the CA's own serving certificate and the admin credentials in its data
    /// directory move to it at once, not in the background, so that retiring the old root
    /// afterwards can neither cut clients off from this replica nor lock the operator out.
    pub(crate) async fn sign_with(&self, signer: SigningCa) -> Result<(), CaError> {
        self.core.set_signer(signer);
        self.move_credentials().await
    }

    /// Issues this replica's serving certificate and admin credentials under the signer in
    /// force (the second half of [`Roots::sign_with`], to retry when it failed).
    pub(crate) async fn move_credentials(&self) -> Result<(), CaError> {
        self.serving.renew().await?;
        bootstrap::write_admin_credentials(&self.issuance, &self.core.data_dir().admin()).await
    }

    /// Takes a root out of the bundle.
    pub(crate) async fn retire(
        &self,
        id: &str,
        force: bool,
        actor: &str,
    ) -> Result<RootRecord, CaError> {
        // Decided on the roots as stored under the lock, as in `activate`.
        let _bundle_change = self.core.changing_bundle().await?;
        let target = self
            .core
            .store
            .roots()
            .map_err(store_err)?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| CaError::NotFound(format!("no root {id:?}; see `trellis root list`")))?;
        match target.state {
            RootState::Active => {
                return Err(CaError::FailedPrecondition(format!(
                    "root {id} is the active (signing) root; activate another root first"
                )));
            }
            RootState::Retired => {
                return Err(CaError::FailedPrecondition(format!(
                    "root {id} is already retired"
                )));
            }
            RootState::Pending | RootState::Retiring => {}
        }
        let mut users: Vec<String> = self
            .census()
            .await?
            .newest
            .into_values()
            .filter(|r| r.root_id == id)
            .map(|r| r.spiffe_id)
            .collect();
        users.sort();
        if !users.is_empty() && !force {
            return Err(CaError::FailedPrecondition(format!(
                "{} {} an unexpired certificate that chains to root {id}: {}. \
                 They move to the active root at their next renewal (within {} at most); or \
                 use --force: until they renew, peers will refuse their certificates",
                users.len(),
                if users.len() == 1 {
                    "workload still uses"
                } else {
                    "workloads still use"
                },
                describe(&users),
                trellis_identity::duration::format(self.core.config.max_ttl)
            )));
        }
        // After the workloads: theirs is the refusal that names what to wait for.
        if target.state == RootState::Retiring && !force {
            self.refuse_before_replicas_follow(id)?;
        }
        let mut retired = target;
        retired.state = RootState::Retired;
        let change = Change {
            roots: vec![retired.clone()],
            ..Change::default()
        };
        let version = self.core.bundle().version() + 1;
        self.bump_bundle(change, version, "root_retired", id, actor)
            .await?;
        Ok(retired)
    }

    /// Who has not yet acknowledged bundle `version`, which first carried `subject` (a root
    /// or a JWT key about to sign); unless `force`, refuses while anyone has not, saying
    /// that until then they refuse `refused` (what the new signer vouches for).
    pub(crate) async fn converged_on(
        &self,
        subject: &str,
        version: u64,
        force: bool,
        refused: &str,
    ) -> Result<Convergence, CaError> {
        let convergence = self.convergence(&self.census().await?, version);
        if convergence.unconverged.is_empty() || force {
            return Ok(convergence);
        }
        Err(CaError::FailedPrecondition(format!(
            "{} of {} live {} not yet received a trust bundle containing {subject} \
             (bundle version {version}): {}. Wait for them (they follow the CA's bundle \
             stream), or use --force: until they receive it they will refuse {refused}",
            convergence.unconverged.len(),
            convergence.live,
            if convergence.live == 1 {
                "workload has"
            } else {
                "workloads have"
            },
            describe(&convergence.unconverged)
        )))
    }

    /// Replicas sharing the store move to an activated intermediate when they next read the
    /// store ([`FOLLOW_INTERVAL`]), and their serving certificates and admin credentials with
    /// it; until then one may still sign, and serve, under the root the activation left.
    /// The census cannot tell (every replica serves as the same identity), so root changes
    /// that depend on every replica having followed wait [`REPLICAS_FOLLOW`] after the last
    /// activation (read from the active intermediate, which the activating replica issued
    /// then; the one made at initialisation counts as no activation). Returns, while that wait lasts, the active root, how long ago it was
    /// activated and when the wait ends.
    fn replicas_following(&self) -> Result<Option<(String, Duration, SystemTime)>, CaError> {
        // Only a shared store has other replicas (sled is opened by one CA).
        if !matches!(self.core.config.store, StoreConfig::Postgres(_)) {
            return Ok(None);
        }
        let Some(active) = self.core.store.active_intermediate().map_err(store_err)? else {
            return Ok(None);
        };
        // The first intermediate was made at initialisation, which every replica's start
        // waits for: there is nothing to follow.
        if self.core.store.intermediates().map_err(store_err)?.len() <= 1 {
            return Ok(None);
        }
        let info = CertInfo::parse(&active.cert_der)
            .map_err(|e| CaError::Internal(format!("stored intermediate {}: {e}", active.id)))?;
        let activated_at = info.not_before + profile::BACKDATE;
        let ready_at = activated_at + REPLICAS_FOLLOW;
        let now = self.core.now();
        if now >= ready_at {
            return Ok(None);
        }
        let ago = now.duration_since(activated_at).unwrap_or_default();
        Ok(Some((active.root_id, ago, ready_at)))
    }

    /// Refuses to retire root `id`, which signed until the last activation, before every
    /// replica has followed that activation.
    fn refuse_before_replicas_follow(&self, id: &str) -> Result<(), CaError> {
        let Some((_, ago, ready_at)) = self.replicas_following()? else {
            return Ok(());
        };
        Err(CaError::FailedPrecondition(format!(
            "root {id} signed until {} ago, and other replicas of this CA may still sign and \
             serve under it until they follow the activation (within {}); retire it after {}, \
             or use --force",
            trellis_identity::duration::format(ago),
            trellis_identity::duration::format(REPLICAS_FOLLOW),
            trellis_identity::bundle::format_time(ready_at),
        )))
    }

    /// Refuses to activate root `id` right after another activation (through any replica),
    /// which other replicas may not have followed yet: two activations at once are two
    /// operators (or scripts) disagreeing, and the second must not silently undo the first.
    fn refuse_right_after_an_activation(&self, id: &str) -> Result<(), CaError> {
        let Some((active, ago, ready_at)) = self.replicas_following()? else {
            return Ok(());
        };
        Err(CaError::FailedPrecondition(format!(
            "root {active} was activated {} ago (other replicas of this CA follow an \
             activation within {}); check `trellis root list`, and activate root {id} after \
             {} if it is still meant to sign, or use --force",
            trellis_identity::duration::format(ago),
            trellis_identity::duration::format(REPLICAS_FOLLOW),
            trellis_identity::bundle::format_time(ready_at),
        )))
    }

    /// Other trust domains that federate with this one read a new root from the bundle
    /// endpoint at most every refresh hint, and this CA cannot see their sidecars'
    /// acknowledgements: signing with a root younger than that could have them refuse this
    /// domain's workloads. Only a CA that serves its bundle endpoint is held to it.
    fn refuse_before_partners_refresh(&self, root: &RootRecord) -> Result<(), CaError> {
        let config = &self.core.config;
        if config.bundle_endpoint_listen.is_none() {
            return Ok(());
        }
        let hint = config.bundle_refresh_hint;
        let ready_at = root.added_at.saturating_add(hint.as_secs());
        let now = self.core.now_unix();
        if now >= ready_at {
            return Ok(());
        }
        Err(CaError::FailedPrecondition(format!(
            "root {} was added {} ago, and this CA serves its bundle to other trust domains \
             (bundle_endpoint_listen), which read it at most every {} (bundle_refresh_hint): \
             their sidecars may not hold the new root yet. Activate it after {}, or use \
             --force",
            root.id,
            trellis_identity::duration::format(std::time::Duration::from_secs(
                now.saturating_sub(root.added_at)
            )),
            trellis_identity::duration::format(hint),
            trellis_identity::bundle::format_time(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(ready_at)
            ),
        )))
    }

    /// Records `change` with a new bundle version, durably, and publishes the bundle.
    pub(crate) async fn bump_bundle(
        &self,
        mut change: Change,
        version: u64,
        kind: &str,
        root: &str,
        actor: &str,
    ) -> Result<(), CaError> {
        change.bundle_version = Some(version);
        change
            .audit
            .push(self.root_audit(kind, root, actor, &format!("bundle version {version}")));
        self.commit_root_change(&change).await?;
        self.core.republish_bundle(kind, root).await
    }

    /// Writes `change` in one step and signs the audit log's new head at once (every
    /// root change is checkpointed), then waits until both are durable.
    async fn commit_root_change(&self, change: &Change) -> Result<(), CaError> {
        let store = &self.core.store;
        let mark = store.mark();
        store.apply(change).map_err(store_err)?;
        self.audit.checkpoint()?;
        store.durable(mark).await.map_err(store_err)
    }

    /// The audit entry of a change to root (or JWT key) `root`.
    pub(crate) fn root_audit(
        &self,
        kind: &str,
        root: &str,
        actor: &str,
        detail: &str,
    ) -> AuditRecord {
        AuditRecord {
            time: self.core.now_unix(),
            kind: kind.into(),
            spiffe_id: String::new(),
            serial: root.into(),
            actor: actor.into(),
            detail: detail.into(),
        }
    }
}

/// Logs a warning when a root or the signing intermediate enters the last 20 % of its life;
/// checks at start and hourly.
pub(crate) async fn watch_expiry(core: Arc<Core>, stop: CancellationToken) {
    loop {
        let now = core.now();
        let mut certs: Vec<(String, Vec<u8>)> = core
            .store
            .roots()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.state != RootState::Retired)
            .map(|r| (format!("root {}", r.id), r.cert_der))
            .collect();
        let signer = core.signer();
        certs.push((format!("intermediate {}", signer.id), signer.cert.to_vec()));
        for (name, der) in certs {
            if let Ok(info) = CertInfo::parse(&der)
                && late_in_life(&info, now)
            {
                tracing::warn!(
                    certificate = %name,
                    not_after = %trellis_identity::bundle::format_time(info.not_after),
                    "CA certificate is in the last 20% of its life; plan a rotation (`trellis root add`)"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// True once less than 20 % of the certificate's lifetime is left.
pub(crate) fn late_in_life(info: &CertInfo, now: SystemTime) -> bool {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    let left = info.not_after.duration_since(now).unwrap_or_default();
    left < lifetime / 5
}

/// Up to ten of `ids`, sorted, then how many more.
fn describe(ids: &[String]) -> String {
    let mut shown: Vec<&str> = ids.iter().take(NAMED).map(String::as_str).collect();
    shown.sort_unstable();
    let mut text = shown.join(", ");
    if ids.len() > NAMED {
        text.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    text
}
