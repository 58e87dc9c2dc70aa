//! The CA's services, wired once at start-up over the shared [`Core`]. This aggregate is
//! only the wiring the servers hold: it has no behaviour of its own, each request goes to
//! the one service it concerns.

use std::sync::Arc;

use crate::acks::BundleAcks;
use crate::attest::kubernetes::Attestor;
use crate::audit::Audit;
use crate::bootstrap::store_err;
use crate::crl::Crls;
use crate::error::CaError;
use crate::federation::Federations;
use crate::follow::Follower;
use crate::issuance::Issuance;
use crate::jwt_svid::{JwtKeys, JwtSigner, JwtSvids};
use crate::limits::Limits;
use crate::revocation::Revocations;
use crate::roots::Roots;
use crate::serving::ServingIdentity;
use crate::state::Core;
use crate::tokens::JoinTokens;

/// Every service of a running CA.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) core: Arc<Core>,
    /// Overload protection for the issuance APIs, checked by their adapters.
    pub(crate) limits: Arc<Limits>,
    /// Verifies Kubernetes service-account tokens, if `[kubernetes]` is configured.
    pub(crate) kubernetes: Option<Arc<Attestor>>,
    pub(crate) issuance: Arc<Issuance>,
    pub(crate) serving: Arc<ServingIdentity>,
    pub(crate) tokens: JoinTokens,
    pub(crate) revocations: Arc<Revocations>,
    pub(crate) acks: Arc<BundleAcks>,
    pub(crate) roots: Arc<Roots>,
    pub(crate) jwt_keys: Arc<JwtKeys>,
    pub(crate) jwt_svids: JwtSvids,
    pub(crate) federations: Arc<Federations>,
    pub(crate) audit: Arc<Audit>,
    pub(crate) crls: Crls,
    /// Reads back what other replicas sharing the store changed.
    pub(crate) follower: Arc<Follower>,
}

impl Services {
    /// Wires the services of an initialised CA; `jwt_signer` is its active JWT key.
    pub(crate) fn new(core: Core, jwt_signer: Arc<JwtSigner>) -> Result<Self, CaError> {
        let core = Arc::new(core);
        let kubernetes = core
            .config
            .kubernetes
            .clone()
            .map(|k| Arc::new(Attestor::new(k)));
        let revocations = Arc::new(Revocations::load(core.clone())?);
        let acks = Arc::new(BundleAcks::load(core.clone()).map_err(store_err)?);
        let issuance = Arc::new(Issuance::new(core.clone(), kubernetes.clone()));
        let serving = Arc::new(ServingIdentity::new(issuance.clone()));
        let audit = Arc::new(Audit::new(core.clone()));
        let roots = Arc::new(Roots::new(
            core.clone(),
            acks.clone(),
            revocations.clone(),
            audit.clone(),
            issuance.clone(),
            serving.clone(),
        ));
        let jwt_keys = Arc::new(JwtKeys::new(core.clone(), roots.clone(), jwt_signer));
        let follower = Arc::new(Follower::new(
            core.clone(),
            revocations.clone(),
            jwt_keys.clone(),
            roots.clone(),
        ));
        Ok(Self {
            follower,
            limits: Arc::new(Limits::new(core.config.limits.clone())),
            kubernetes,
            tokens: JoinTokens::new(core.clone()),
            jwt_svids: JwtSvids::new(core.clone(), revocations.clone(), jwt_keys.clone()),
            federations: Arc::new(Federations::new(core.clone())),
            crls: Crls::new(core.clone(), revocations.clone()),
            issuance,
            serving,
            revocations,
            acks,
            roots,
            jwt_keys,
            audit,
            core,
        })
    }
}
