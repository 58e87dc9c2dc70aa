//! X.509 CRLs (RFC 5280 §5) for tools outside the mesh (`openssl verify -crl_check`, curl,
//! nginx): one per intermediate, listing its unexpired revoked certificates (each with its
//! reason code, if one was given), cached until the revocation list changes or half its
//! validity has passed.

use std::collections::HashMap;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::Mutex;
use trellis_identity::crl_reason::CrlReason;

use trellis_identity::profile::{CrlEntry, SigningCa};

use crate::error::CaError;
use crate::keys::Keys;
use crate::revocation::Revocations;
use crate::state::{Core, off_runtime, unix};
use crate::store::Store;

/// How long a CRL is valid (its nextUpdate); it is re-signed after half of this.
pub(crate) const CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// A signed CRL and what it was signed from.
#[derive(Debug)]
struct SignedCrl {
    revocation_version: u64,
    signed_at: SystemTime,
    der: Vec<u8>,
}

/// The CRL service, shared by the HTTP endpoint and the admin status.
#[derive(Debug)]
pub(crate) struct Crls {
    core: Arc<Core>,
    revocations: Arc<Revocations>,
    /// Signed CRLs by intermediate id. Held locked while a CRL is signed, so two requests
    /// never sign with the same number.
    cache: Mutex<HashMap<String, SignedCrl>>,
}

impl Crls {
    pub(crate) fn new(core: Arc<Core>, revocations: Arc<Revocations>) -> Self {
        Self {
            core,
            revocations,
            cache: Mutex::default(),
        }
    }

    /// The DER CRL of intermediate `id` (the active one if `None`).
    pub(crate) async fn get(&self, id: Option<&str>) -> Result<Vec<u8>, CaError> {
        let core = &*self.core;
        let signer = core.signer();
        let id = id.unwrap_or(&signer.id).to_owned();
        let revocations = self.revocations.current();
        let now = core.now();
        let mut cache = self.cache.lock().await;
        if let Some(crl) = cache.get(&id)
            && crl.revocation_version == revocations.version
            && now.duration_since(crl.signed_at).unwrap_or_default() < CRL_VALIDITY / 2
        {
            return Ok(crl.der.clone());
        }
        // Loading a key file and signing run on the blocking pool (a CRL over many
        // revocations is a large signature input; the key is a file read).
        let issuer = if id == signer.id {
            signer
        } else {
            let store = core.store.clone();
            let keys = core.keys.clone();
            let wanted = id.clone();
            Arc::new(off_runtime(move || load_intermediate(&*store, &keys, &wanted)).await?)
        };
        let entries: Vec<CrlEntry> = revocations
            .entries
            .iter()
            .filter(|r| r.intermediate_id == id)
            .map(|r| CrlEntry {
                serial: trellis_identity::hex::decode(&r.serial).unwrap_or_default(),
                revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.revoked_at),
                reason: r.reason_code.and_then(|c| CrlReason::from_code(c.into())),
            })
            .collect();
        let number = match next_crl_number(&*core.store, &id, now).await {
            Ok(number) => number,
            // The store cannot record a number now (disk full, read-only): the cached CRL
            // is still valid until its nextUpdate, and no revocation can have been recorded
            // meanwhile either.
            Err(e) => match cache.get(&id) {
                Some(crl)
                    if now.duration_since(crl.signed_at).unwrap_or_default() < CRL_VALIDITY =>
                {
                    tracing::warn!(error = %e, "serving the cached CRL: cannot record a new CRL number");
                    return Ok(crl.der.clone());
                }
                _ => return Err(e),
            },
        };
        let der =
            off_runtime(move || Ok(issuer.sign_crl(&entries, now, now + CRL_VALIDITY, number)?))
                .await?;
        cache.insert(
            id,
            SignedCrl {
                revocation_version: revocations.version,
                signed_at: now,
                der: der.clone(),
            },
        );
        Ok(der)
    }

    /// The nextUpdate of the CRL served for the signing intermediate now (signing one if
    /// the cached one is due): what a relying party holding it may use it until.
    pub(crate) async fn active_next_update(&self) -> Result<SystemTime, CaError> {
        let id = self.core.signer().id.clone();
        self.get(Some(&id)).await?;
        let cache = self.cache.lock().await;
        cache
            .get(&id)
            .map(|crl| crl.signed_at + CRL_VALIDITY)
            .ok_or_else(|| CaError::Internal(format!("the CRL of {id} vanished from the cache")))
    }
}

/// The number for intermediate `id`'s next CRL, on disk before it is used: the signing
/// time in seconds, or one more than the last number if that is not above it (two CRLs
/// within one second, or a clock set back), so numbers increase strictly per issuer
/// (RFC 5280, section 5.2.3), across restarts too, and replicas sharing the store never
/// take the same one.
async fn next_crl_number(store: &dyn Store, id: &str, now: SystemTime) -> Result<u64, CaError> {
    let unavailable = |e: crate::store::StoreError| CaError::Unavailable(e.to_string());
    let mark = store.mark();
    let number = store.next_crl_number(id, unix(now)).map_err(unavailable)?;
    store.durable(mark).await.map_err(unavailable)?;
    Ok(number)
}

fn load_intermediate(store: &dyn Store, keys: &Keys, id: &str) -> Result<SigningCa, CaError> {
    let record = store
        .intermediates()
        .map_err(crate::bootstrap::store_err)?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| {
            CaError::NotFound(format!("no intermediate {id:?}; see `trellis ca status`"))
        })?;
    let key = keys.load(&record.key_file, "intermediate key")?;
    Ok(SigningCa::new(CertificateDer::from(record.cert_der), key)?)
}
