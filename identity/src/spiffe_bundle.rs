//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle, §4): a JWK Set whose keys are
//! X.509 authorities (`use: x509-svid`, the root certificate in `x5c`) and JWT authorities
//! (`use: jwt-svid`, with a `kid`), plus `spiffe_sequence` and `spiffe_refresh_hint`. What a
//! bundle endpoint serves and what federation reads from another trust domain's.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;

use crate::bundle::{BundleError, JwtKey, TrustBundle};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::CertInfo;

const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// The largest bundle document accepted (a bundle holds a handful of keys).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// One trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    pub trust_domain: TrustDomain,
    /// Increases with every change (`spiffe_sequence`).
    pub sequence: u64,
    /// How often a consumer should fetch it again (`spiffe_refresh_hint`).
    pub refresh_hint: Option<Duration>,
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// The keys that sign its JWT-SVIDs (ES256); keys of other curves are ignored.
    pub jwt_authorities: Vec<JwtKey>,
}

/// Why a document is not a usable SPIFFE bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleFormatError {
    #[error("the bundle is {0} bytes; at most {MAX_BUNDLE_BYTES} are accepted")]
    TooLarge(usize),
    #[error("not a SPIFFE bundle (a JSON Web Key Set): {0}")]
    Json(String),
    #[error("key #{index} ({usage}): {reason}")]
    BadKey {
        index: usize,
        usage: &'static str,
        reason: String,
    },
    #[error("the bundle has no X.509 authority (no key with \"use\": \"x509-svid\")")]
    NoX509Authority,
    #[error("the bundle's roots are not usable: {0}")]
    Roots(String),
    #[error("key #{index} is a root of trust domain {found}, not of {expected}")]
    ForeignRoot {
        index: usize,
        found: String,
        expected: String,
    },
}

#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use")]
    usage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

/// An EC certificate's curve name and point coordinates (base64url), from its SPKI.
fn ec_point(cert: &[u8]) -> Result<(&'static str, String, String), String> {
    let cert = Certificate::from_der(cert).map_err(|e| format!("not a certificate: {e}"))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let (name, size) = match curve {
        Some(P256) => ("P-256", 32),
        Some(P384) => ("P-384", 48),
        _ => return Err("not an EC P-256 or P-384 key".into()),
    };
    let point = spki.subject_public_key.raw_bytes();
    if point.len() != 1 + 2 * size || point[0] != 4 {
        return Err("the EC point is not uncompressed".into());
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..=size]);
    let y = URL_SAFE_NO_PAD.encode(&point[1 + size..]);
    Ok((name, x, y))
}

impl SpiffeBundle {
    /// The bundle of `bundle`'s roots and JWT keys.
    pub fn from_trust_bundle(bundle: &TrustBundle, refresh_hint: Option<Duration>) -> Self {
        Self {
            trust_domain: bundle.trust_domain().clone(),
            sequence: bundle.version(),
            refresh_hint,
            x509_authorities: bundle.roots().to_vec(),
            jwt_authorities: bundle.jwt_keys().to_vec(),
        }
    }

    /// The X.509 authorities as a bundle to verify X509-SVIDs with.
    pub fn to_trust_bundle(&self) -> Result<TrustBundle, BundleFormatError> {
        TrustBundle::new(
            self.trust_domain.clone(),
            self.sequence,
            self.x509_authorities.clone(),
        )
        .map(|b| b.with_jwt_keys(self.jwt_authorities.clone()))
        .map_err(|e: BundleError| BundleFormatError::Roots(e.to_string()))
    }

    /// The JSON document (pretty-printed, as bundle endpoints usually serve it).
    pub fn to_json(&self) -> String {
        let mut keys = Vec::new();
        for root in &self.x509_authorities {
            // Roots were checked when they entered a TrustBundle; a key that cannot be
            // described is left out rather than served wrong.
            let Ok((crv, x, y)) = ec_point(root) else {
                continue;
            };
            keys.push(Jwk {
                kty: "EC".into(),
                usage: "x509-svid".into(),
                kid: None,
                crv: Some(crv.into()),
                x: Some(x),
                y: Some(y),
                x5c: Some(vec![STANDARD.encode(root)]),
            });
        }
        for key in &self.jwt_authorities {
            let Some((x, y)) = key.coordinates() else {
                continue;
            };
            keys.push(Jwk {
                kty: "EC".into(),
                usage: "jwt-svid".into(),
                kid: Some(key.key_id.clone()),
                crv: Some("P-256".into()),
                x: Some(URL_SAFE_NO_PAD.encode(x)),
                y: Some(URL_SAFE_NO_PAD.encode(y)),
                x5c: None,
            });
        }
        let set = JwkSet {
            keys: keys
                .into_iter()
                .map(|k| serde_json::to_value(k).expect("a JWK is plain data"))
                .collect(),
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint.map(|d| d.as_secs()),
        };
        serde_json::to_string_pretty(&set).expect("a JWK set is plain data")
    }

    /// Reads the bundle document of `trust_domain`. Keys of unknown type or use are
    /// ignored, as the standard says; a known key that is malformed is an error, and so is
    /// a bundle without any X.509 authority.
    pub fn parse(trust_domain: TrustDomain, document: &[u8]) -> Result<Self, BundleFormatError> {
        if document.len() > MAX_BUNDLE_BYTES {
            return Err(BundleFormatError::TooLarge(document.len()));
        }
        let set: JwkSet =
            serde_json::from_slice(document).map_err(|e| BundleFormatError::Json(e.to_string()))?;
        let mut bundle = Self {
            trust_domain,
            sequence: set.spiffe_sequence.unwrap_or(0),
            refresh_hint: set.spiffe_refresh_hint.map(Duration::from_secs),
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
        };
        for (index, value) in set.keys.into_iter().enumerate() {
            let Ok(key) = serde_json::from_value::<Jwk>(value) else {
                // No `kty` or `use`: not a key this standard describes.
                continue;
            };
            match (key.kty.as_str(), key.usage.as_str()) {
                (_, "x509-svid") => {
                    let root = x509_authority(index, key)?;
                    check_trust_domain(index, &root, &bundle.trust_domain)?;
                    bundle.x509_authorities.push(root);
                }
                ("EC", "jwt-svid") => {
                    if let Some(key) = jwt_authority(index, key)? {
                        bundle.jwt_authorities.push(key);
                    }
                }
                _ => {}
            }
        }
        if bundle.x509_authorities.is_empty() {
            return Err(BundleFormatError::NoX509Authority);
        }
        bundle.to_trust_bundle()?;
        Ok(bundle)
    }
}

fn x509_authority(index: usize, key: Jwk) -> Result<CertificateDer<'static>, BundleFormatError> {
    let bad = |reason: String| BundleFormatError::BadKey {
        index,
        usage: "x509-svid",
        reason,
    };
    let x5c = key.x5c.unwrap_or_default();
    let [cert] = x5c.as_slice() else {
        return Err(bad(format!(
            "x5c must hold exactly one certificate, it holds {}",
            x5c.len()
        )));
    };
    let der = STANDARD
        .decode(cert)
        .map_err(|e| bad(format!("x5c is not base64: {e}")))?;
    // The key parameters, when given, must describe the certificate's key.
    if key.x.is_some() || key.y.is_some() {
        let (crv, x, y) = ec_point(&der).map_err(bad)?;
        if key.crv.as_deref() != Some(crv) || key.x != Some(x) || key.y != Some(y) {
            return Err(bad(
                "the key parameters do not match the certificate's public key".into(),
            ));
        }
    }
    Ok(CertificateDer::from(der))
}

/// A root that names a trust domain (a `spiffe://` URI SAN, as SPIRE's roots do) must name
/// this one: a bundle of another trust domain's roots is refused.
fn check_trust_domain(
    index: usize,
    root: &CertificateDer<'_>,
    expected: &TrustDomain,
) -> Result<(), BundleFormatError> {
    let info = CertInfo::parse(root).map_err(|e| BundleFormatError::BadKey {
        index,
        usage: "x509-svid",
        reason: e.to_string(),
    })?;
    for uri in &info.uris {
        if let Ok(id) = SpiffeId::new(uri)
            && id.trust_domain_name() != expected.as_str()
        {
            return Err(BundleFormatError::ForeignRoot {
                index,
                found: id.trust_domain_name().to_owned(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

fn jwt_authority(index: usize, key: Jwk) -> Result<Option<JwtKey>, BundleFormatError> {
    let bad = |reason: &str| BundleFormatError::BadKey {
        index,
        usage: "jwt-svid",
        reason: reason.to_owned(),
    };
    let key_id = key
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("a JWT authority needs a kid"))?;
    // Trellis validates ES256 only: a key on another curve cannot have signed a token it
    // accepts, so it is left out (its tokens fail as of an unknown kid).
    if key.crv.as_deref() != Some("P-256") {
        return Ok(None);
    }
    let coordinate = |c: Option<String>| {
        c.and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .filter(|c| c.len() == 32)
            .ok_or_else(|| bad("x and y must be 32-byte base64url coordinates"))
    };
    let mut public_key = vec![4u8];
    public_key.extend(coordinate(key.x)?);
    public_key.extend(coordinate(key.y)?);
    Ok(Some(JwtKey { key_id, public_key }))
}

#[cfg(test)]
mod tests;
