//! X.509 CRLs (RFC 5280 §5) for tools outside the mesh (`openssl verify -crl_check`, curl,
//! nginx): one per intermediate, listing its unexpired revoked certificates, cached until
//! the revocation list changes or half its validity has passed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use trellis_identity::files;
use trellis_identity::profile::{CrlEntry, SigningCa};
use zeroize::Zeroizing;

use crate::bootstrap::DataDir;
use crate::error::CaError;
use crate::state::{CaState, unix};

/// How long a CRL is valid (its nextUpdate); it is re-signed after half of this.
pub const CRL_VALIDITY: Duration = Duration::from_secs(3600);

/// A signed CRL and what it was signed from.
#[derive(Debug)]
struct SignedCrl {
    revocation_version: u64,
    signed_at: SystemTime,
    der: Vec<u8>,
}

/// Signed CRLs by intermediate id.
#[derive(Debug, Default)]
pub struct CrlCache(Mutex<HashMap<String, SignedCrl>>);

impl CrlCache {
    /// The DER CRL of intermediate `id` (the active one if `None`).
    pub fn get(&self, state: &CaState, id: Option<&str>) -> Result<Vec<u8>, CaError> {
        let signer = state.signer();
        let id = id.unwrap_or(&signer.id).to_owned();
        let revocations = state.revocations();
        let now = state.now();
        {
            let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(crl) = cache.get(&id)
                && crl.revocation_version == revocations.version
                && now.duration_since(crl.signed_at).unwrap_or_default() < CRL_VALIDITY / 2
            {
                return Ok(crl.der.clone());
            }
        }
        let issuer = if id == signer.id {
            signer
        } else {
            std::sync::Arc::new(load_intermediate(state, &id)?)
        };
        let entries: Vec<CrlEntry> = revocations
            .entries
            .iter()
            .filter(|r| r.intermediate_id == id)
            .map(|r| CrlEntry {
                serial: trellis_identity::hex::decode(&r.serial).unwrap_or_default(),
                revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.revoked_at),
            })
            .collect();
        // The CRL number must increase per issuer, across restarts too: the signing time
        // in seconds does (a CRL is signed at most once per revocation change or half-hour).
        let der = issuer.sign_crl(&entries, now, now + CRL_VALIDITY, unix(now))?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            SignedCrl {
                revocation_version: revocations.version,
                signed_at: now,
                der: der.clone(),
            },
        );
        Ok(der)
    }
}

fn load_intermediate(state: &CaState, id: &str) -> Result<SigningCa, CaError> {
    let record = state
        .store
        .intermediates()
        .map_err(crate::bootstrap::store_err)?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| {
            CaError::NotFound(format!("no intermediate {id:?}; see `trellis ca status`"))
        })?;
    let path = DataDir(state.config.data_dir.clone())
        .keys()
        .join(&record.key_file);
    let pem =
        Zeroizing::new(files::read_secret(&path).map_err(|e| {
            CaError::Unavailable(format!("intermediate key {}: {e}", path.display()))
        })?);
    let key = KeyPair::from_pem(&String::from_utf8_lossy(&pem))
        .map_err(|e| CaError::Internal(format!("intermediate key {}: {e}", path.display())))?;
    Ok(SigningCa::new(CertificateDer::from(record.cert_der), key)?)
}
