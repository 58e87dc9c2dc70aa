//! JWT-SVIDs (SPIFFE JWT-SVID standard): the claims the CA signs and the validation every
//! relying party runs, through `jsonwebtoken`. ES256 only; the key must be one of the
//! bundle's JWT keys, named by the token's `kid`.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::bundle::TrustBundle;
use crate::spiffe::SpiffeId;

/// The claims of a JWT-SVID as the Trellis CA signs them (JWT-SVID standard, section 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The SPIFFE ID of the workload.
    pub sub: String,
    /// Who may accept the token; never empty.
    pub aud: Vec<String>,
    /// Expiry and issuance, Unix seconds.
    pub exp: u64,
    pub iat: u64,
}

/// A token that passed [`validate`].
#[derive(Debug, Clone)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    /// Every claim of the token, as sent.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a token is refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSvidError {
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    #[error("JWT-SVID signed with {0}; only ES256 is accepted")]
    Algorithm(String),
    #[error("JWT-SVID has no `kid` header; it cannot be matched to a bundle key")]
    NoKeyId,
    #[error("JWT-SVID signed with key {0:?}, which is not in the trust bundle of {1}")]
    UnknownKey(String, String),
    #[error("JWT-SVID signature does not verify with bundle key {0:?}")]
    BadSignature(String),
    #[error("JWT-SVID expired at unix time {0}")]
    Expired(u64),
    #[error("JWT-SVID is not for audience {0:?}")]
    Audience(String),
    #[error("JWT-SVID subject {0:?} is not a SPIFFE ID of trust domain {1}")]
    Subject(String, String),
}

/// Validates `token` like [`validate`], against the bundle of the trust domain its `sub`
/// names: `own`, or one of the trust domains `own` federates with. The unverified `sub`
/// only picks the bundle; [`validate`] then checks the signature with that bundle's keys
/// and that `sub` is in its trust domain, so a token cannot borrow another domain's keys.
pub fn validate_federated(
    token: &str,
    audience: &str,
    own: &TrustBundle,
    now: SystemTime,
) -> Result<ValidatedJwtSvid, JwtSvidError> {
    let claimed = unverified_subject_trust_domain(token);
    let bundle = match claimed {
        Some(td) if td != own.trust_domain().as_str() => {
            match own.federated().iter().find(|(name, _)| name.as_str() == td) {
                Some((_, bundle)) => bundle.as_ref(),
                // Not federated: refused with the own domain's reasons (unknown key or
                // foreign subject), as before federation existed.
                None => own,
            }
        }
        _ => own,
    };
    validate(token, audience, bundle, now)
}

/// The trust domain of the token's `sub`, read without checking anything.
fn unverified_subject_trust_domain(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Subject {
        sub: String,
    }
    let data = jsonwebtoken::dangerous::insecure_decode::<Subject>(token).ok()?;
    SpiffeId::new(&data.claims.sub)
        .ok()
        .map(|id| id.trust_domain_name().to_owned())
}

/// Validates `token` for `audience` against `bundle`'s JWT keys at `now`: the header names
/// ES256 and a `kid` of the bundle, the signature verifies with that key, `exp` is after
/// `now` (no leeway), `aud` contains `audience`, and `sub` is a SPIFFE ID of the bundle's
/// trust domain.
pub fn validate(
    token: &str,
    audience: &str,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<ValidatedJwtSvid, JwtSvidError> {
    let td = bundle.trust_domain().to_string();
    // An unknown `alg` ("none" among them) does not even parse as a header.
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        JwtSvidError::Malformed(format!("{e} (only ES256 tokens with a kid are accepted)"))
    })?;
    if header.alg != Algorithm::ES256 {
        return Err(JwtSvidError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(JwtSvidError::NoKeyId)?;
    let key = bundle
        .jwt_keys()
        .iter()
        .find(|k| k.key_id == kid)
        .ok_or_else(|| JwtSvidError::UnknownKey(kid.clone(), td.clone()))?;
    let decoding = crate::jwk::decoding_key(key)
        .ok_or_else(|| JwtSvidError::UnknownKey(kid.clone(), td.clone()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    // Expiry is checked below against the caller's clock, which tests move.
    validation.validate_exp = false;
    validation.set_audience(&[audience]);
    validation.required_spec_claims = ["exp", "sub", "aud"]
        .into_iter()
        .map(String::from)
        .collect::<HashSet<_>>();
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &decoding,
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => {
            JwtSvidError::BadSignature(kid.clone())
        }
        ErrorKind::InvalidAudience => JwtSvidError::Audience(audience.to_owned()),
        ErrorKind::InvalidAlgorithm => JwtSvidError::Algorithm(format!("{:?}", header.alg)),
        _ => JwtSvidError::Malformed(e.to_string()),
    })?;
    let exp = data
        .claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| JwtSvidError::Malformed("`exp` is not a number of seconds".into()))?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if exp <= now_secs {
        return Err(JwtSvidError::Expired(exp));
    }
    let sub = data
        .claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let spiffe_id = SpiffeId::new(sub)
        .ok()
        .filter(|id| id.trust_domain_name() == bundle.trust_domain().as_str())
        .ok_or_else(|| JwtSvidError::Subject(sub.to_owned(), td.clone()))?;
    Ok(ValidatedJwtSvid {
        spiffe_id,
        claims: data.claims,
    })
}
