//! JWT-SVIDs (the SPIFFE JWT-SVID standard): bearer tokens for the places mTLS does not
//! reach. The CA signs them with a P-256 key of their own (ES256), separate from the X.509
//! keys, named by a `kid`; `sub` is the SPIFFE ID of the caller's verified workload
//! certificate, `aud` as asked (never empty), lifetimes short.
//!
//! The public keys travel in the trust bundle, so the bundle stream, its versions and the
//! workloads' acknowledgements cover them; rotation (`rotation.rs`) keeps the safety of
//! root rotation.

mod rotation;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde::Deserialize;
use trellis_identity::jwt_svid::Claims;
use trellis_identity::{SpiffeId, duration};
use zeroize::Zeroizing;

pub(crate) use rotation::{JwtKeyView, JwtKeys};

use crate::bootstrap::store_err;
use crate::config::ConfigError;
use crate::error::CaError;
use crate::keys::Keys;
use crate::peer::PeerChain;
use crate::revocation::Revocations;
use crate::state::Core;
use crate::store::{AuditRecord, Change, JwtKeyRecord, RootState, Store};
use trellis_identity::spiffe::reserved::PREFIX as RESERVED_PREFIX;

/// The longest JWT-SVID lifetime a configuration may allow.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime the CA signs (a shorter request gets this).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// How long after a key stopped signing it still counts as signing, for a mint that read
/// the key just before the switch.
pub const SWITCH_GRACE: Duration = Duration::from_secs(5);

/// The `[jwt_svid]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidFile {
    /// Lifetime when the caller asks for none (default 5m).
    pub default_ttl: Option<String>,
    /// The longest lifetime a caller may ask for (default 1h, at most 24h).
    pub max_ttl: Option<String>,
}

/// Validated JWT-SVID settings.
#[derive(Debug, Clone, Copy)]
pub struct JwtSvidConfig {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for JwtSvidConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

impl JwtSvidFile {
    /// Validates the table, filling defaults.
    pub fn build(self) -> Result<JwtSvidConfig, ConfigError> {
        let defaults = JwtSvidConfig::default();
        let parse = |name: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => {
                duration::parse(&text).map_err(|e| ConfigError(format!("jwt_svid.{name}: {e}")))
            }
        };
        let default_ttl = parse("default_ttl", self.default_ttl, defaults.default_ttl)?;
        let max_ttl = parse("max_ttl", self.max_ttl, defaults.max_ttl)?;
        for (name, value) in [("default_ttl", default_ttl), ("max_ttl", max_ttl)] {
            if !(MIN_TTL..=MAX_TTL).contains(&value) {
                return Err(ConfigError(format!(
                    "jwt_svid.{name} is {}; it must be between {} and {}",
                    duration::format(value),
                    duration::format(MIN_TTL),
                    duration::format(MAX_TTL)
                )));
            }
        }
        if default_ttl > max_ttl {
            return Err(ConfigError(format!(
                "jwt_svid.default_ttl ({}) is longer than jwt_svid.max_ttl ({})",
                duration::format(default_ttl),
                duration::format(max_ttl)
            )));
        }
        Ok(JwtSvidConfig {
            default_ttl,
            max_ttl,
        })
    }
}

/// The active JWT key: what signs.
pub struct JwtSigner {
    pub kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// Loads the key a record names (`keys.rs`).
    pub(crate) fn load(keys: &Keys, record: &JwtKeyRecord) -> Result<Self, CaError> {
        let key = keys.load(&record.key_file, "JWT signing key")?;
        if key.public_key_raw() != record.public_key.as_slice() {
            return Err(CaError::Internal(format!(
                "JWT signing key {} does not match the public key recorded for kid {}",
                record.key_file, record.kid
            )));
        }
        let der = Zeroizing::new(key.serialize_der());
        Ok(Self {
            kid: record.kid.clone(),
            key: EncodingKey::from_ec_der(&der),
        })
    }

    /// Signs `claims` with this key: ES256, `typ` JWT, `kid` set.
    pub fn sign(&self, claims: &Claims) -> Result<String, CaError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| CaError::Internal(format!("signing a JWT-SVID: {e}")))
    }
}

/// A new P-256 key, saved as `jwt-<kid>.key.pem` (`keys.rs`), and its record (state
/// pending, to be set by the caller).
pub(crate) fn generate_key(
    keys: &Keys,
    now: u64,
    bundle_version: u64,
) -> Result<JwtKeyRecord, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Internal(format!("generating a JWT signing key: {e}")))?;
    let public_key = key.public_key_raw().to_vec();
    // The kid names the key, not a secret: the first 16 hex digits of its point's SHA-256.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public_key);
    let kid = trellis_identity::hex::encode(&digest.as_ref()[..8]);
    let key_file = format!("jwt-{kid}.key.pem");
    let pem = Zeroizing::new(key.serialize_pem());
    keys.save(&key_file, &pem)?;
    Ok(JwtKeyRecord {
        kid,
        state: RootState::Pending,
        created_at: now,
        public_key,
        key_file,
        added_in_bundle_version: bundle_version,
        deactivated_at: None,
    })
}

/// At start-up: the active JWT key, created (active at once) if the data directory has
/// none yet. For a new CA the key joins the first bundle version; for a data directory from
/// before JWT-SVIDs (`published`: sidecars may already hold its bundle) the bundle version
/// moves on, so that every sidecar takes the key in. Nothing can have been signed with a
/// key that did not exist, so no workload can refuse a token for lacking it, except for
/// the moment until its bundle stream delivers it.
pub(crate) fn ensure_active_key(
    store: &dyn Store,
    keys: &Keys,
    now: u64,
    published: bool,
) -> Result<JwtKeyRecord, CaError> {
    let records = store.jwt_keys().map_err(store_err)?;
    if let Some(active) = records.iter().find(|k| k.state == RootState::Active) {
        return Ok(active.clone());
    }
    let mut version = store.bundle_version().map_err(store_err)?;
    if published {
        version += 1;
    }
    let mut record = generate_key(keys, now, version)?;
    record.state = RootState::Active;
    store
        .apply(&Change {
            jwt_keys: vec![record.clone()],
            bundle_version: Some(version),
            audit: vec![AuditRecord {
                time: now,
                kind: "jwt_key_created".into(),
                spiffe_id: String::new(),
                serial: record.kid.clone(),
                actor: "trellis-ca".into(),
                detail: format!("JWT-SVID signing key, active, bundle version {version}"),
            }],
            ..Change::default()
        })
        .map_err(store_err)?;
    store.flush_now().map_err(store_err)?;
    tracing::info!(kid = %record.kid, version, "JWT-SVID signing key created");
    Ok(record)
}

/// The keys the bundle carries: every one not retired, oldest first.
pub fn bundle_keys(store: &dyn Store) -> Result<Vec<trellis_identity::bundle::JwtKey>, CaError> {
    Ok(store
        .jwt_keys()
        .map_err(store_err)?
        .into_iter()
        .filter(|k| k.state.in_bundle())
        .map(|k| trellis_identity::bundle::JwtKey {
            key_id: k.kid,
            public_key: k.public_key,
        })
        .collect())
}

/// A signed JWT-SVID.
#[derive(Debug)]
pub(crate) struct Minted {
    /// The compact JWS; a bearer token, never logged.
    pub(crate) token: Zeroizing<String>,
    pub(crate) claims: Claims,
}

/// The JWT-SVID service: whom a token may name, and minting it with the active key.
#[derive(Debug)]
pub(crate) struct JwtSvids {
    core: Arc<Core>,
    revocations: Arc<Revocations>,
    keys: Arc<JwtKeys>,
}

impl JwtSvids {
    pub(crate) fn new(core: Arc<Core>, revocations: Arc<Revocations>, keys: Arc<JwtKeys>) -> Self {
        Self {
            core,
            revocations,
            keys,
        }
    }

    /// The identity a JWT-SVID request may get: the SPIFFE ID of the connection's client
    /// certificate, verified like a renewal's (current bundle, unexpired, unrevoked, not a
    /// reserved identity).
    pub(crate) fn subject(&self, chain: &PeerChain) -> Result<SpiffeId, CaError> {
        if chain.is_empty() {
            return Err(CaError::Unauthenticated(
                "a JWT-SVID is issued only to a workload that presents its current certificate                  as TLS client certificate"
                    .into(),
            ));
        }
        let verified = self
            .core
            .verify_peer(chain, self.core.now())
            .map_err(|e| CaError::Unauthenticated(format!("certificate refused: {e}")))?;
        if verified
            .spiffe_id
            .is_under(self.core.config.trust_domain.as_str(), RESERVED_PREFIX)
        {
            return Err(CaError::PermissionDenied(format!(
                "{} is a reserved identity and gets no JWT-SVID",
                verified.spiffe_id
            )));
        }
        if let Some(revoked) = self
            .revocations
            .of(&verified.serial)
            .map_err(|e| CaError::store("no JWT-SVID was issued", e))?
        {
            return Err(CaError::Unauthenticated(format!(
                "certificate {} was revoked at unix {} ({}); no JWT-SVID for it",
                verified.serial, revoked.revoked_at, revoked.reason
            )));
        }
        Ok(verified.spiffe_id)
    }

    /// Signs a JWT-SVID for `subject` (already verified by the caller) with the active key.
    pub(crate) async fn mint(
        &self,
        subject: &SpiffeId,
        audience: Vec<String>,
        ttl: Option<Duration>,
    ) -> Result<Minted, CaError> {
        if audience.is_empty() {
            return Err(CaError::InvalidArgument(
                "a JWT-SVID needs at least one audience (the `aud` claim): name the service \
                 that will receive the token"
                    .into(),
            ));
        }
        if let Some(bad) = audience
            .iter()
            .find(|a| a.trim().is_empty() || a.len() > 1024)
        {
            return Err(CaError::InvalidArgument(format!(
                "audience {bad:?} is empty or longer than 1024 bytes"
            )));
        }
        let limits = self.core.config.jwt_svid;
        let ttl = ttl
            .unwrap_or(limits.default_ttl)
            .clamp(MIN_TTL, limits.max_ttl);
        let signer = self.keys.active();
        let iat = self.core.now_unix();
        let claims = Claims {
            sub: subject.to_string(),
            aud: audience,
            exp: iat + ttl.as_secs(),
            iat,
        };
        let token = Zeroizing::new(signer.sign(&claims)?);
        let store = &self.core.store;
        let mark = store.mark();
        store
            .append_audit(&AuditRecord {
                time: iat,
                kind: "jwt_svid_minted".into(),
                spiffe_id: claims.sub.clone(),
                serial: signer.kid.clone(),
                actor: claims.sub.clone(),
                detail: format!("aud {}, exp {}", claims.aud.join(" "), claims.exp),
            })
            .map_err(|e| CaError::store("no JWT-SVID was issued", e))?;
        store
            .durable(mark)
            .await
            .map_err(|e| CaError::store("no JWT-SVID was issued", e))?;
        Ok(Minted { token, claims })
    }
}

/// Loads the signer for the active record at start-up.
pub(crate) fn load_signer(keys: &Keys, active: &JwtKeyRecord) -> Result<Arc<JwtSigner>, CaError> {
    JwtSigner::load(keys, active).map(Arc::new)
}
